CREATE TYPE mood AS ENUM ('awful', 'sad', 'ok', 'happy');
CREATE TABLE m (id int, v mood);
