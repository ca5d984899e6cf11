drop policy "rp" on "public"."r";

create policy "rp"
on "public"."r"
as permissive
for all
to public
using ((owner = SESSION_USER));
