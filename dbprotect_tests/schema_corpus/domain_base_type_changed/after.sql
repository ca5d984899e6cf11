CREATE DOMAIN qty AS bigint;
