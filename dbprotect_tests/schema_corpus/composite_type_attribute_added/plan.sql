alter type "public"."pair" add attribute "c" text;
