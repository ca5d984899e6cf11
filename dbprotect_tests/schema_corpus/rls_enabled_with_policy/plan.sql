alter table "public"."r" enable row level security;

create policy "rp"
on "public"."r"
as permissive
for select
to public
using ((owner = CURRENT_USER));
