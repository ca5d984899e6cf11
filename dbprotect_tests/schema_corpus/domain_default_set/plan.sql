alter domain "public"."qty" set default 1;
