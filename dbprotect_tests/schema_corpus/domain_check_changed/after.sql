CREATE DOMAIN rating_year AS integer CHECK (VALUE > 1950);
CREATE TABLE film (id int PRIMARY KEY, y rating_year);
