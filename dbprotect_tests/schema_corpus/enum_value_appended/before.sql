CREATE TYPE mood AS ENUM ('sad', 'ok');
CREATE TABLE m (id int, v mood DEFAULT 'ok');
