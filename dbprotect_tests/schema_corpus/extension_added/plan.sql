create extension if not exists "citext" with schema "public" version '1.8';

alter table "public"."t" add column "email" citext;
