alter table "public"."t" alter column "name" set not null;
