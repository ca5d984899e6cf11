CREATE TABLE t (id int);
CREATE TABLE old (id int);
