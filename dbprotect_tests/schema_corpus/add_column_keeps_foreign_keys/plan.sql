alter table "public"."hub" add column "note" text;
