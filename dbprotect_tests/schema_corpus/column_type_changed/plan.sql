alter table "public"."t" alter column "name" set data type character varying(200) using "name"::character varying(200);
