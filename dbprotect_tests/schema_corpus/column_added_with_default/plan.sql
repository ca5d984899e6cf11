alter table "public"."t" add column "created" timestamp with time zone not null default now();
