CREATE TABLE r (id int, owner text);
ALTER TABLE r ENABLE ROW LEVEL SECURITY;
CREATE POLICY rp ON r USING (owner = current_user);
