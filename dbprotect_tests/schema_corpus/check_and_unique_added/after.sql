CREATE TABLE t (id int PRIMARY KEY, code text UNIQUE, qty int CHECK (qty >= 0));
