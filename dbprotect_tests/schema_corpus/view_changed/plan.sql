create or replace view "public"."v" as  SELECT id,
    name
   FROM t;
