create schema if not exists "billing";

create table "billing"."invoice" (
    "id" integer not null,
    "total" numeric(12,2)
);

CREATE UNIQUE INDEX invoice_pkey ON billing.invoice USING btree (id);

alter table "billing"."invoice" add constraint "invoice_pkey" PRIMARY KEY using index "invoice_pkey";
