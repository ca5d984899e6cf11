alter type "public"."mood" add value 'awful' before 'sad';

alter type "public"."mood" add value 'ok' after 'sad';
