CREATE TABLE t (id int, name text, g int GENERATED ALWAYS AS (id * 2) STORED);
CREATE TABLE child () INHERITS (t);
