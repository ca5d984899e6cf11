alter domain "public"."qty" drop default;
