alter sequence "public"."sq" as bigint increment by 5 minvalue 1 maxvalue 5000 start with 1 cache 1 cycle;
