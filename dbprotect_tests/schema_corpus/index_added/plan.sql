CREATE INDEX t_name_idx ON public.t USING btree (name);
