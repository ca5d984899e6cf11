CREATE INDEX p1_id_idx ON public.p1 USING btree (id);

CREATE INDEX p_id_idx ON ONLY public.p USING btree (id);

alter index "public"."p_id_idx" attach partition "public"."p1_id_idx";
