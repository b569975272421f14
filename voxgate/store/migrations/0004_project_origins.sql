-- 0004_project_origins: the web origins a project's ephemeral keys may be
-- used from (a JSON array of "scheme://host[:port]" strings; '[]' = any).
ALTER TABLE projects ADD COLUMN allowed_origins TEXT NOT NULL DEFAULT '[]';
