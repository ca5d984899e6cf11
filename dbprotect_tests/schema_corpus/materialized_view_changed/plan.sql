drop materialized view if exists "public"."mv";

create materialized view "public"."mv" as  SELECT id,
    name
   FROM t;
