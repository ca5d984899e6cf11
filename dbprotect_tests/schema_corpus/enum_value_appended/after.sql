CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE m (id int, v mood DEFAULT 'ok');
