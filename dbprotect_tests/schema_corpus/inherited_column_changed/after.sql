CREATE TABLE t (id int, name text COLLATE "C", g int GENERATED ALWAYS AS (id * 3) STORED);
CREATE TABLE child () INHERITS (t);
