alter domain "public"."code" drop constraint "code_upper";
