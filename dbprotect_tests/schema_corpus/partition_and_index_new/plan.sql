create table "public"."p2" partition of "public"."p" FOR VALUES FROM (10) TO (20);

CREATE INDEX p1_id_idx ON public.p1 USING btree (id);

CREATE INDEX p2_id_idx ON public.p2 USING btree (id);

CREATE INDEX p_id_idx ON ONLY public.p USING btree (id);

alter index "public"."p_id_idx" attach partition "public"."p1_id_idx";

alter index "public"."p_id_idx" attach partition "public"."p2_id_idx";
