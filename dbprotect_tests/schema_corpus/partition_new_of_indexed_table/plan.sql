create table "public"."p2" partition of "public"."p" FOR VALUES FROM (10) TO (20);
