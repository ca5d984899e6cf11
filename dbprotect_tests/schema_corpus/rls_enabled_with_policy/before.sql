CREATE TABLE r (id int, owner text);
