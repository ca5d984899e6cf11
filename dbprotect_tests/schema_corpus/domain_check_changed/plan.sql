alter domain "public"."rating_year" drop constraint "rating_year_check";

alter domain "public"."rating_year" add constraint "rating_year_check" CHECK (VALUE > 1950);
