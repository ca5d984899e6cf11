-- Every database dbprotect manages carries an environment marker; destructive steps check it.
ALTER DATABASE app SET dbprotect.environment = 'development';
COMMENT ON DATABASE app IS 'dbprotect.environment=development';
