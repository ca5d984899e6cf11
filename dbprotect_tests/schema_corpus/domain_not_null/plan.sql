alter domain "public"."qty" set not null;
