drop table "public"."old";
