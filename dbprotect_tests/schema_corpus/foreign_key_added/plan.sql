alter table "public"."b" add constraint "b_a_id_fkey" FOREIGN KEY ("a_id") REFERENCES "public"."a"("id") NOT VALID;

alter table "public"."b" validate constraint "b_a_id_fkey";
