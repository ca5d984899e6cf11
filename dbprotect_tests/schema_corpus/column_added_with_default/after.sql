CREATE TABLE t (id int PRIMARY KEY, created timestamptz NOT NULL DEFAULT now());
