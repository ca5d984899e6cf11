drop trigger if exists "tr" on "public"."r";

CREATE TRIGGER tr BEFORE INSERT OR UPDATE ON public.r FOR EACH ROW EXECUTE FUNCTION tf();
