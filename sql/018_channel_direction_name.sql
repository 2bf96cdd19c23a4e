-- A channel's direction as its source names it (e.g. "vers Béziers"), next to the
-- direction code: shown in the API answers, the yearly files and the web page.
ALTER TABLE channels ADD COLUMN direction_name text;
