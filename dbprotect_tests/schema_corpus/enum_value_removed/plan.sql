alter type "public"."mood" rename to "mood__old_version_to_be_dropped";

create type "public"."mood" as enum ('sad', 'happy');

alter table "public"."m" alter column v type "public"."mood" using v::text::"public"."mood";

drop type "public"."mood__old_version_to_be_dropped";
