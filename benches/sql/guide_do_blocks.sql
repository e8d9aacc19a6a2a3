-- The guide's Phase 1 and Phase 2 DO blocks, copied verbatim from
-- /work/shared/seed/data-migration-guide.md ("Phase 1: Bulk Historical Data Migration" and
-- "Phase 2: Pipeline and Appointment Data Migration"). Only the `-- step:` marker lines
-- between the blocks are added: benches/backfill.rs runs each step as its own statement
-- (its own transaction, as psql would) and times it.

-- step: customers
-- Migrate all existing contacts to customers table
DO $$
DECLARE
    batch_size INTEGER := 1000;
    batch_count INTEGER := 0;
    total_records INTEGER;
    processed_records INTEGER := 0;
    start_time TIMESTAMP := clock_timestamp();
BEGIN
    -- Get total count for progress tracking
    SELECT COUNT(*) INTO total_records FROM contacts;
    
    RAISE NOTICE 'Starting migration of % contacts to customers table', total_records;
    
    -- Process in batches to avoid memory issues
    LOOP
        WITH batch AS (
            SELECT * FROM contacts 
            WHERE id NOT IN (SELECT cst_id FROM customers WHERE migrated_from_contact_id IS NOT NULL)
            LIMIT batch_size
        )
        INSERT INTO customers (
            cst_id, workspace_id, firstname, lastname, email, phone1, phone2,
            address1, city, state, zip, country,
            dateadded, lastchanged, created_at, updated_at, created_by,
            migrated_from_contact_id, migration_timestamp
        )
        SELECT 
            c.id, c.workspace_id, c.firstname, c.lastname, c.email, c.phone_number, NULL,
            c.st_address, c.city, c.state, c.zip, 'US',
            c.created_at, c.updated_at, c.created_at, c.updated_at, c.created_by,
            c.id, NOW()
        FROM batch c
        ON CONFLICT (cst_id) DO NOTHING;
        
        GET DIAGNOSTICS batch_count = ROW_COUNT;
        processed_records := processed_records + batch_count;
        
        -- Progress reporting
        IF batch_count > 0 THEN
            RAISE NOTICE 'Processed batch: %, Total processed: %/% (%.1f%%) - Elapsed: %', 
                batch_count, processed_records, total_records, 
                (processed_records::float / total_records * 100),
                clock_timestamp() - start_time;
        END IF;
        
        -- Exit when no more records to process
        EXIT WHEN batch_count = 0;
    END LOOP;
    
    RAISE NOTICE 'Customer migration completed. Total records processed: %', processed_records;
END $$;

-- step: leads
-- Create leads for contacts with lead_status
DO $$
DECLARE
    batch_size INTEGER := 1000;
    batch_count INTEGER := 0;
    total_records INTEGER;
    processed_records INTEGER := 0;
    start_time TIMESTAMP := clock_timestamp();
BEGIN
    -- Get total count of contacts with lead status
    SELECT COUNT(*) INTO total_records 
    FROM contacts 
    WHERE lead_status IS NOT NULL;
    
    RAISE NOTICE 'Starting lead creation for % contacts with lead status', total_records;
    
    -- Process in batches
    LOOP
        WITH batch AS (
            SELECT * FROM contacts 
            WHERE lead_status IS NOT NULL 
            AND id NOT IN (SELECT customer_id FROM leads WHERE migrated_from_contact_id IS NOT NULL)
            LIMIT batch_size
        )
        INSERT INTO leads (
            customer_id, workspace_id, productid, source, sourcesubdescr, disposition,
            stg_id, priority, entrydate, lastchangedon,
            created_at, updated_at, created_by,
            migrated_from_contact_id, migration_timestamp
        )
        SELECT 
            c.id, c.workspace_id, 
            CASE 
                WHEN c.tags LIKE '%solar%' THEN 'SOLAR'
                WHEN c.tags LIKE '%hvac%' THEN 'HVAC'
                WHEN c.tags LIKE '%roofing%' THEN 'ROOFING'
                ELSE 'DEFAULT'
            END,
            COALESCE(c.lead_source, 'Unknown'), 
            NULL,
            c.lead_status,
            -- Map appointment_status_id to stg_id
            CASE 
                WHEN c.appointment_status_id = 1 THEN 1  -- New Lead
                WHEN c.appointment_status_id = 2 THEN 2  -- Contacted
                WHEN c.appointment_status_id = 3 THEN 3  -- Qualified
                WHEN c.appointment_status_id = 4 THEN 4  -- Appointment Set
                ELSE 1
            END,
            COALESCE(c.priority, 3),
            c.created_at, c.updated_at,
            c.created_at, c.updated_at, c.created_by,
            c.id, NOW()
        FROM batch c;
        
        GET DIAGNOSTICS batch_count = ROW_COUNT;
        processed_records := processed_records + batch_count;
        
        -- Progress reporting
        IF batch_count > 0 THEN
            RAISE NOTICE 'Lead batch processed: %, Total: %/% (%.1f%%) - Elapsed: %', 
                batch_count, processed_records, total_records, 
                (processed_records::float / total_records * 100),
                clock_timestamp() - start_time;
        END IF;
        
        EXIT WHEN batch_count = 0;
    END LOOP;
    
    RAISE NOTICE 'Lead migration completed. Total leads created: %', processed_records;
END $$;

-- step: custom_fields
-- Migrate contact custom fields to customer custom fields
DO $$
DECLARE
    batch_size INTEGER := 5000;  -- Larger batch for smaller records
    batch_count INTEGER := 0;
    total_records INTEGER;
    processed_records INTEGER := 0;
    start_time TIMESTAMP := clock_timestamp();
BEGIN
    -- Get total count of custom field values
    SELECT COUNT(*) INTO total_records FROM contact_custom_fields;
    
    RAISE NOTICE 'Starting migration of % custom field values', total_records;
    
    -- First, update custom_fields table to set context_type for existing fields
    UPDATE custom_fields SET context_type = 'contact' WHERE context_type IS NULL;
    
    -- Process custom field values in batches
    LOOP
        WITH batch AS (
            SELECT ccf.* FROM contact_custom_fields ccf
            WHERE NOT EXISTS (
                SELECT 1 FROM customer_custom_fields cuf 
                WHERE cuf.customer_id = ccf.contact_id AND cuf.field_id = ccf.field_id
            )
            LIMIT batch_size
        )
        INSERT INTO customer_custom_fields (
            customer_id, field_id, value,
            created_at, updated_at, created_by
        )
        SELECT 
            ccf.contact_id, ccf.field_id, ccf.value,
            ccf.created_at, ccf.updated_at, ccf.created_by
        FROM batch ccf
        -- Only migrate if the customer exists (should exist from previous step)
        WHERE EXISTS (SELECT 1 FROM customers c WHERE c.cst_id = ccf.contact_id)
        ON CONFLICT (customer_id, field_id) DO NOTHING;
        
        GET DIAGNOSTICS batch_count = ROW_COUNT;
        processed_records := processed_records + batch_count;
        
        -- Progress reporting
        IF batch_count > 0 THEN
            RAISE NOTICE 'Custom fields batch: %, Total: %/% (%.1f%%) - Elapsed: %', 
                batch_count, processed_records, total_records, 
                (processed_records::float / total_records * 100),
                clock_timestamp() - start_time;
        END IF;
        
        EXIT WHEN batch_count = 0;
    END LOOP;
    
    RAISE NOTICE 'Custom fields migration completed. Total values migrated: %', processed_records;
END $$;

-- step: appointments
-- Create appointments from contact appointment history
DO $$
DECLARE
    batch_size INTEGER := 1000;
    processed_count INTEGER := 0;
BEGIN
    RAISE NOTICE 'Creating appointments from contact appointment data';
    
    -- Create appointments for contacts with appointment dates
    INSERT INTO appointments (
        lead_id, workspace_id, apptdate, disposition,
        apptset, verified, confirmed, 
        setdate, verifieddate, confirmeddate,
        created_at, updated_at,
        migrated_from_contact_id, migration_timestamp
    )
    SELECT 
        l.id,  -- lead_id
        c.workspace_id,
        c.appointment_date,
        -- Map appointment_result_id to disposition
        CASE 
            WHEN c.appointment_result_id = 1 THEN 'Show'
            WHEN c.appointment_result_id = 2 THEN 'No Show'
            WHEN c.appointment_result_id = 3 THEN 'Cancelled'
            WHEN c.appointment_result_id = 4 THEN 'Reschedule'
            ELSE 'Pending'
        END,
        -- Set appointment flags based on status
        CASE WHEN c.appointment_status_id >= 4 THEN TRUE ELSE FALSE END,  -- apptset
        CASE WHEN c.appointment_status_id >= 5 THEN TRUE ELSE FALSE END,  -- verified
        CASE WHEN c.appointment_status_id >= 6 THEN TRUE ELSE FALSE END,  -- confirmed
        -- Estimate dates based on timestamps (simplified)
        c.appointment_date - INTERVAL '1 day',  -- setdate
        c.appointment_date - INTERVAL '4 hours', -- verifieddate
        c.appointment_date - INTERVAL '1 hour',  -- confirmeddate
        c.created_at, c.updated_at,
        c.id, NOW()
    FROM contacts c
    JOIN leads l ON l.customer_id = c.id AND l.migrated_from_contact_id = c.id
    WHERE c.appointment_date IS NOT NULL
    AND NOT EXISTS (
        SELECT 1 FROM appointments a 
        WHERE a.lead_id = l.id AND a.migrated_from_contact_id = c.id
    );
    
    GET DIAGNOSTICS processed_count = ROW_COUNT;
    RAISE NOTICE 'Appointments migration completed. Created % appointments', processed_count;
END $$;
