-- Which tier runs a function: its own component (`compiled`), or the
-- language's interpreter while its own component is built (`pending`),
-- could not be built (`failed`, with `tier_error` saying why), or is not
-- built because the host does not tier up (`interpreted`).
ALTER TABLE meta.functions ADD COLUMN tier VARCHAR(16) NOT NULL DEFAULT 'compiled'
    CHECK (tier IN ('compiled', 'pending', 'failed', 'interpreted'));
ALTER TABLE meta.functions ADD COLUMN tier_error TEXT;
