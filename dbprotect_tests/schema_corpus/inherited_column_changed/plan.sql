alter table "public"."t" alter column "g" set expression as ((id * 3));

alter table "public"."t" alter column "name" set data type text collate "C" using "name"::text;
