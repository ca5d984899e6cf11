-- Every database dbprotect manages carries an environment marker; destructive steps check it.
ALTER DATABASE app SET dbprotect.environment = 'production';
COMMENT ON DATABASE app IS 'dbprotect.environment=production';
