alter table "public"."b" drop constraint "b_a_id_fkey";

alter table "public"."a" alter column "id" set data type bigint using "id"::bigint;

alter table "public"."b" alter column "a_id" set data type bigint using "a_id"::bigint;

alter table "public"."b" add constraint "b_a_id_fkey" FOREIGN KEY ("a_id") REFERENCES "public"."a"("id") NOT VALID;

alter table "public"."b" validate constraint "b_a_id_fkey";
