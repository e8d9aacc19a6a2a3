-- The guide's sync layer ("Data Synchronization Setup", Steps 1-3), installed on tables
-- created by `leadsync setup` (the guide's Steps 1-4 as SPEC §2 fixes them) and filled by
-- benches/sql/set_based.sql (the guide's Phase 1/2 mapping). The three function bodies are
-- copied verbatim. Changed only where needed for the guide's triggers to run at all
-- (notes/guide-sql-baseline.md):
--
-- * FIX-1: `ON CONFLICT (customer_id, productid)` in sync_contact_to_customer needs a
--   unique constraint on exactly those columns; the guide never creates one.
-- * FIX-3: the reverse trigger (customers -> contacts) fires the forward trigger again,
--   which fires the reverse one, until `stack depth limit exceeded` on every contacts
--   UPDATE. Guarded with `WHEN (pg_trigger_depth() < 1)`.
-- * The guide's Step 3 indexes on migrated_from_contact_id are plain indexes; SPEC §2 makes
--   them unique (one migrated lead and appointment per contact), and with that index the
--   trigger's `'DEFAULT'`-product lead for a contact whose bulk-migrated lead has another
--   product fails with a unique violation. They are put back as the guide wrote them.
--
-- benches/compare.rs runs this file once, on the template the trigger variant is cloned from.

ALTER TABLE leads
    ADD CONSTRAINT leads_customer_id_productid_key UNIQUE (customer_id, productid);

DROP INDEX IF EXISTS idx_leads_migrated_from;
CREATE INDEX idx_leads_migrated_from ON leads(migrated_from_contact_id)
    WHERE migrated_from_contact_id IS NOT NULL;
DROP INDEX IF EXISTS idx_appointments_migrated_from;

-- Step 1: Contact to Customer Synchronization

-- Create function to sync contacts to customers
CREATE OR REPLACE FUNCTION sync_contact_to_customer()
RETURNS TRIGGER AS $$
BEGIN
    -- Handle INSERT
    IF TG_OP = 'INSERT' THEN
        INSERT INTO customers (
            cst_id, workspace_id, firstname, lastname, email, phone1,
            address1, address2, city, state, zip,
            dateadded, lastchanged, created_at, updated_at, created_by,
            migrated_from_contact_id
        ) VALUES (
            NEW.id, NEW.workspace_id, NEW.firstname, NEW.lastname, NEW.email, NEW.phone_number,
            NEW.st_address, NULL, NEW.city, NEW.state, NEW.zip,
            NEW.created_at, NEW.updated_at, NEW.created_at, NEW.updated_at, NEW.created_by,
            NEW.id
        )
        ON CONFLICT (cst_id) DO UPDATE SET
            firstname = EXCLUDED.firstname,
            lastname = EXCLUDED.lastname,
            email = EXCLUDED.email,
            phone1 = EXCLUDED.phone1,
            address1 = EXCLUDED.address1,
            city = EXCLUDED.city,
            state = EXCLUDED.state,
            zip = EXCLUDED.zip,
            lastchanged = NOW(),
            updated_at = NOW();
        
        -- Create initial lead if lead_status exists
        IF NEW.lead_status IS NOT NULL THEN
            INSERT INTO leads (
                customer_id, workspace_id, productid, source, disposition,
                entrydate, lastchangedon, created_at, updated_at, created_by,
                migrated_from_contact_id
            ) VALUES (
                NEW.id, NEW.workspace_id, 'DEFAULT', NEW.lead_source, NEW.lead_status,
                NEW.created_at, NEW.updated_at, NEW.created_at, NEW.updated_at, NEW.created_by,
                NEW.id
            )
            ON CONFLICT DO NOTHING;
        END IF;
        
        RETURN NEW;
    END IF;
    
    -- Handle UPDATE
    IF TG_OP = 'UPDATE' THEN
        UPDATE customers SET
            firstname = NEW.firstname,
            lastname = NEW.lastname,
            email = NEW.email,
            phone1 = NEW.phone_number,
            address1 = NEW.st_address,
            city = NEW.city,
            state = NEW.state,
            zip = NEW.zip,
            lastchanged = NOW(),
            updated_at = NOW()
        WHERE cst_id = NEW.id;
        
        -- Update or create lead if lead_status changed
        IF OLD.lead_status IS DISTINCT FROM NEW.lead_status AND NEW.lead_status IS NOT NULL THEN
            INSERT INTO leads (
                customer_id, workspace_id, productid, source, disposition,
                entrydate, lastchangedon, created_at, updated_at, created_by,
                migrated_from_contact_id
            ) VALUES (
                NEW.id, NEW.workspace_id, 'DEFAULT', NEW.lead_source, NEW.lead_status,
                NEW.created_at, NOW(), NEW.created_at, NOW(), NEW.created_by,
                NEW.id
            )
            ON CONFLICT (customer_id, productid) DO UPDATE SET
                disposition = EXCLUDED.disposition,
                source = EXCLUDED.source,
                lastchangedon = NOW(),
                updated_at = NOW();
        END IF;
        
        RETURN NEW;
    END IF;
    
    -- Handle DELETE
    IF TG_OP = 'DELETE' THEN
        -- Mark as deleted rather than hard delete to maintain referential integrity
        UPDATE customers SET
            lastchanged = NOW(),
            updated_at = NOW()
        WHERE cst_id = OLD.id;
        
        RETURN OLD;
    END IF;
    
    RETURN NULL;
END;
$$ LANGUAGE plpgsql SECURITY DEFINER;

-- Create trigger
CREATE TRIGGER sync_contact_to_customer_trigger
    AFTER INSERT OR UPDATE OR DELETE ON contacts
    FOR EACH ROW EXECUTE FUNCTION sync_contact_to_customer();

-- Step 2: Custom Fields Synchronization

-- Create function to sync custom fields
CREATE OR REPLACE FUNCTION sync_custom_fields()
RETURNS TRIGGER AS $$
BEGIN
    -- Handle INSERT/UPDATE
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        -- Determine target table based on field context
        INSERT INTO customer_custom_fields (
            customer_id, field_id, value, created_at, updated_at, created_by
        ) 
        SELECT 
            NEW.contact_id, NEW.field_id, NEW.value, 
            NEW.created_at, NEW.updated_at, NEW.created_by
        FROM custom_fields cf
        WHERE cf.id = NEW.field_id 
        AND cf.context_type = 'contact'
        ON CONFLICT (customer_id, field_id) DO UPDATE SET
            value = EXCLUDED.value,
            updated_at = EXCLUDED.updated_at;
        
        RETURN NEW;
    END IF;
    
    -- Handle DELETE
    IF TG_OP = 'DELETE' THEN
        DELETE FROM customer_custom_fields 
        WHERE customer_id = OLD.contact_id AND field_id = OLD.field_id;
        
        RETURN OLD;
    END IF;
    
    RETURN NULL;
END;
$$ LANGUAGE plpgsql SECURITY DEFINER;

-- Create trigger
CREATE TRIGGER sync_custom_fields_trigger
    AFTER INSERT OR UPDATE OR DELETE ON contact_custom_fields
    FOR EACH ROW EXECUTE FUNCTION sync_custom_fields();

-- Step 3: Bidirectional Synchronization

-- Create reverse sync to maintain compatibility
CREATE OR REPLACE FUNCTION sync_customer_to_contact()
RETURNS TRIGGER AS $$
BEGIN
    -- Update contact table when customer is modified
    IF TG_OP = 'UPDATE' THEN
        UPDATE contacts SET
            firstname = NEW.firstname,
            lastname = NEW.lastname,
            email = NEW.email,
            phone_number = NEW.phone1,
            st_address = NEW.address1,
            city = NEW.city,
            state = NEW.state,
            zip = NEW.zip,
            updated_at = NOW()
        WHERE id = NEW.cst_id AND NEW.migrated_from_contact_id IS NOT NULL;
        
        RETURN NEW;
    END IF;
    
    RETURN NULL;
END;
$$ LANGUAGE plpgsql SECURITY DEFINER;

-- Create reverse sync trigger (FIX-3: the WHEN clause)
CREATE TRIGGER sync_customer_to_contact_trigger
    AFTER UPDATE ON customers
    FOR EACH ROW
    WHEN (pg_trigger_depth() < 1)
    EXECUTE FUNCTION sync_customer_to_contact();
