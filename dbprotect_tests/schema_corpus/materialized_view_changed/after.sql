CREATE TABLE t (id int, name text);
CREATE MATERIALIZED VIEW mv AS SELECT id, name FROM t;
