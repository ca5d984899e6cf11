CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE TABLE m (id int, v mood);
