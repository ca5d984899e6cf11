CREATE UNIQUE INDEX t_code_key ON public.t USING btree (code);

alter table "public"."t" add constraint "t_code_key" UNIQUE using index "t_code_key";

alter table "public"."t" add constraint "t_qty_check" CHECK ((qty >= 0)) not valid;

alter table "public"."t" validate constraint "t_qty_check";
