alter domain "public"."code" add constraint "code_upper" CHECK (VALUE = upper(VALUE));
