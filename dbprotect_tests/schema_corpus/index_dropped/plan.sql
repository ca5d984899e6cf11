drop index if exists "public"."t_name_idx";
