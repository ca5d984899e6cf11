create table "public"."p" (
    "id" integer,
    "k" integer
) partition by RANGE (k);

create table "public"."p1" partition of "public"."p" FOR VALUES FROM (0) TO (10);

CREATE INDEX p1_id_idx ON public.p1 USING btree (id);

CREATE INDEX p_id_idx ON ONLY public.p USING btree (id);

alter index "public"."p_id_idx" attach partition "public"."p1_id_idx";
