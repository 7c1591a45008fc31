// sparkplane platform: the control plane's Function App (Flex Consumption, Python 3.11) and what it
// talks to: Service Bus (the session-enabled cluster-lifecycle and job-runs queues), Cosmos DB (two regions,
// automatic failover), a storage account for the deployment package and the Functions host,
// a storage account for the workspaces' files (DBFS and workspace files),
// Application Insights on a Log Analytics workspace, and role assignments for the app's
// system-assigned managed identity: no key or connection string anywhere (local auth is off on
// Service Bus, Cosmos DB, storage and Application Insights).
//
//   az group create -n sparkplane -l westeurope
//   az deployment group create -g sparkplane -f infra/main.bicep -p cosmosSecondaryLocation=northeurope
//
// docs/deploy.md has the whole procedure, every app setting and what an operator sees.
targetScope = 'resourceGroup'

@description('Region of the function app, Service Bus, storage and monitoring (a region that offers Flex Consumption).')
param location string = resourceGroup().location

@description('Short name in every resource name (lowercase letters, digits and hyphens), followed by a suffix unique to the resource group.')
@minLength(3)
@maxLength(12)
param namePrefix string = 'sparkplane'

@description('Cosmos DB write region (failover priority 0). Defaults to the app\'s region so the app writes locally.')
param cosmosPrimaryLocation string = location

@description('Cosmos DB second region (failover priority 1): a read region that automatic failover promotes to the write region when the primary region is down. Pick the primary\'s paired region (e.g. northeurope for westeurope).')
param cosmosSecondaryLocation string

@description('Multi-region writes. false (default): one write region, reads in both, automatic failover; ETag checks then protect every write. true: both regions take writes and ETags only protect within one region. Conflict policies: docs (clusters, workspaces, tokens) is Custom with no merge procedure, so of two concurrent writes to one item in different regions one is kept and the other goes to the conflicts feed, never dropped silently (the next reconcile redoes a lost transition; an operator can inspect the feed); events and samples are LastWriterWins on /_ts (append-only or disposable). Keep false unless single-region write latency matters more.')
param cosmosMultiRegionWrites bool = false

@description('Zone redundancy of both Cosmos DB regions (not offered in every region).')
param cosmosZoneRedundant bool = false

@description('Cosmos DB database name (SPARKPLANE_COSMOS_DATABASE).')
param cosmosDatabaseName string = 'sparkplane'

@description('Autoscale ceiling of the database\'s shared throughput in RU/s (it scales between 10% and 100% of it, and bills at least 10% every hour). About 1,320 RU/s per 1,000 running clusters (heartbeat samples, the reconciler\'s scan, the node-health reads, which the timer remembers between ticks; bench.azure_scale, docs/deploy.md "Scale"): the default serves about 3,000 and costs an idle platform 400 RU/s; 10,000 running clusters need about 14,000.')
@minValue(1000)
param cosmosMaxThroughput int = 4000

@description('Retention of cluster events in days (SPARKPLANE_EVENT_TTL_DAYS, also the events container\'s default TTL).')
@minValue(1)
param eventTtlDays int = 30

@description('Name of the session-enabled lifecycle queue (SPARKPLANE_LIFECYCLE_QUEUE).')
param lifecycleQueueName string = 'cluster-lifecycle'

@description('Name of the session-enabled queue that advances job runs (SPARKPLANE_JOBS_QUEUE).')
param jobsQueueName string = 'job-runs'

@description('NCRONTAB (six fields, with seconds) of the reconciler timer (SPARKPLANE_RECONCILER_SCHEDULE).')
param reconcilerSchedule string = '*/10 * * * * *'

@description('Seconds between the ARM reads of a RUNNING cluster for drift (SPARKPLANE_DRIFT_CHECK_S): node health comes from the agents\' heartbeats, and ARM is read for a running cluster only when a node is silent or at its drift moment, spread over this period (docs/deploy.md, "Scale"). 0: every reconciler tick, which ARM\'s read limit allows for about 60 running clusters per subscription.')
@minValue(0)
param driftCheckSeconds int = 7200

@description('Delay of the follow-up reconcile while a cluster converges (SPARKPLANE_RECONCILE_INTERVAL_S): each one reads ARM, so ARM\'s read limit bounds how many creates a subscription serves at once (docs/deploy.md, "Scale").')
@minValue(1)
param reconcileIntervalSeconds int = 10

@description('NCRONTAB of the autoscaling timer (SPARKPLANE_AUTOSCALE_SCHEDULE).')
param autoscaleSchedule string = '*/10 * * * * *'

@description('NCRONTAB of the idle-termination timer (SPARKPLANE_IDLE_SCHEDULE).')
param idleSchedule string = '*/30 * * * * *'

@description('NCRONTAB of the jobs timer: cron schedules of jobs, stuck runs (SPARKPLANE_JOBS_SCHEDULE).')
param jobsSchedule string = '*/5 * * * * *'

@description('Region of new workspaces\' managed resource groups when a request names none (SPARKPLANE_ARM_LOCATION).')
param workspaceLocation string = location

@description('https URL of a .tar.gz of the sparkplane source tree that cluster drivers download to run the cluster agent (SPARKPLANE_ARM_AGENT_SOURCE_URL). Empty: clusters run without an agent and report no utilization, which autoscaling and auto-termination act on.')
param agentSourceUrl string = ''

@description('Hex SHA-256 of the archive at agentSourceUrl (SPARKPLANE_ARM_AGENT_SOURCE_SHA256); the node refuses an archive that does not match.')
param agentSourceSha256 string = ''

@description('Subscription that holds the workspaces\' managed resource groups and their clusters (SPARKPLANE_ARM_SUBSCRIPTION_ID); the provisioner role and the conditioned RBAC delegation are granted there and nowhere else. Give it a subscription of its own, as Azure Databricks isolates its managed resource groups; default: this deployment\'s subscription.')
param workspacesSubscriptionId string = subscription().subscriptionId

@description('Further subscriptions for workspaces\' managed resource groups (SPARKPLANE_ARM_SUBSCRIPTION_IDS): each new workspace goes to the one with the fewest clusters (shared/domain/arm_placement.py), and ARM\'s request limits apply per subscription, so each one adds a subscription\'s worth of ARM reads and writes (docs/deploy.md "Scale"). Each gets the same grants as workspacesSubscriptionId; its resource providers and VM quotas are set up beforehand (not in this template).')
param extraWorkspacesSubscriptionIds array = []

@description('Most clusters (with nodes in Azure) one workspaces\' subscription may hold (SPARKPLANE_ARM_SUBSCRIPTION_MAX_CLUSTERS); 0: no maximum. New workspaces go only to a subscription below it (400 QUOTA_EXCEEDED when every one is full), and a cluster whose subscription is full ends TERMINATED with AZURE_QUOTA_EXCEEDED_EXCEPTION. Size it from the subscription\'s VM quota and its ARM request limits: about 14,000 running clusters stay under half of one subscription\'s read refill (docs/deploy.md "Scale").')
@minValue(0)
param workspacesSubscriptionMaxClusters int = 0

@description('OpenSSH public key for break-glass SSH to cluster nodes from inside their VNet (SPARKPLANE_ARM_ADMIN_PUBLIC_KEY). Empty: nobody can log in to a node.')
param nodeAdminPublicKey string = ''

@description('Grant the app\'s identity the custom workspace-provisioner role and the constrained role-assignment delegation on this subscription (modules/provisioner-rbac.bicep). Needs Owner or User Access Administrator on the subscription; set false when an administrator grants them separately.')
param grantProvisionerRoles bool = true

@description('Flex Consumption: most instances the app scales out to.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 100

@description('Flex Consumption: memory of one instance in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Days Log Analytics keeps the logs.')
@minValue(30)
param logRetentionDays int = 30

@description('More app settings (name: value), merged over the ones this template sets.')
param additionalAppSettings object = {}

@description('Tags for every resource.')
param tags object = {}

var token = uniqueString(subscription().id, resourceGroup().id, namePrefix)
var prefix = toLower(namePrefix)
var functionAppName = 'func-${prefix}-${token}'
var storageAccountName = take('st${replace(prefix, '-', '')}${token}', 24)
var deploymentContainerName = 'app-package'
var filesAccountName = take('stf${replace(prefix, '-', '')}${token}', 24)
var filesContainerName = 'workspaces'
var serviceBusFqdn = '${serviceBus.name}.servicebus.windows.net'
var allTags = union(tags, {
  Vendor: 'sparkplane'
})

// Built-in role definition ids.
var storageBlobDataOwner = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
var storageBlobDataContributor = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
var serviceBusDataOwner = '090c5cfd-751d-490a-894a-3ce6f1109419'
var monitoringMetricsPublisher = '3913510d-42f4-4e42-8a64-420c390055eb'
var cosmosDataContributor = '00000000-0000-0000-0000-000000000002'
var keyVaultSecretsUser = '4633458b-17de-408a-b874-0445c86b69e6'
// The Key Vault secret the operator creates once (docs/deploy.md): the key every cluster's Spark
// secret and Spark Connect token are derived from (SPARKPLANE_SPARK_SECRET_KEY).
var sparkSecretKeyName = 'spark-secret-key'

// ---------------------------------------------------------------------------------------------
// Secrets: the key of the clusters' Spark credentials, read by the app as a Key Vault reference
// ---------------------------------------------------------------------------------------------

resource keyVault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  //checkov:skip=CKV_AZURE_109: the Flex Consumption app resolves its Key Vault reference over the vault's public endpoint (no VNet integration in this template); access is Entra ID RBAC only and only the app's identity can read secrets.
  //checkov:skip=CKV_AZURE_189: same reason as CKV_AZURE_109: public network access with Entra ID RBAC-only authorization.
  name: take('kv-${replace(prefix, '-', '')}-${token}', 24)
  location: location
  tags: allTags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Monitoring
// ---------------------------------------------------------------------------------------------

resource logs 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: 'log-${prefix}-${token}'
  location: location
  tags: allTags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: logRetentionDays
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: 'appi-${prefix}-${token}'
  location: location
  tags: allTags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logs.id
    IngestionMode: 'LogAnalytics'
    DisableLocalAuth: true
  }
}

// ---------------------------------------------------------------------------------------------
// Storage: the deployment package (Flex Consumption) and the Functions host (timer leases)
// ---------------------------------------------------------------------------------------------

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  //checkov:skip=CKV_AZURE_35: the Flex Consumption app reaches this account over its public endpoint (no VNet integration in this template); access is Entra ID only (allowSharedKeyAccess false), so the network rule is not what protects it.
  //checkov:skip=CKV_AZURE_59: same reason: the app has no private network path to the account; public network access with identity-only authentication.
  //checkov:skip=CKV_AZURE_206: zone-redundant (ZRS) is the redundancy this account needs: the deployment package is uploaded again by every publish and the host's timer leases are transient; a geo copy would serve an app that runs in one region only.
  //checkov:skip=CKV_AZURE_43: the name is computed ('st' + the prefix + uniqueString(), cut to 24 lowercase letters and digits), which the check cannot evaluate statically.
  name: storageAccountName
  location: location
  tags: allTags
  sku: {
    name: 'Standard_ZRS'
  }
  kind: 'StorageV2'
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    publicNetworkAccess: 'Enabled'
    supportsHttpsTrafficOnly: true
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

// ---------------------------------------------------------------------------------------------
// Storage: the workspaces' files (shared/adapters/blob_files.py): one virtual directory per
// workspace in the 'workspaces' container. Not the workspace's own storage account: that one
// admits only its workers subnet, which the app (no VNet integration) is not in.
// ---------------------------------------------------------------------------------------------

resource filesStorage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  //checkov:skip=CKV_AZURE_35: the Flex Consumption app reaches this account over its public endpoint (no VNet integration in this template); access is Entra ID only (allowSharedKeyAccess false) and only the app's identity holds a data role on it, so the network rule is not what protects it.
  //checkov:skip=CKV_AZURE_59: same reason: the app has no private network path to the account; public network access with identity-only authentication.
  //checkov:skip=CKV_AZURE_43: the name is computed ('stf' + the prefix + uniqueString(), cut to 24 lowercase letters and digits), which the check cannot evaluate statically.
  name: filesAccountName
  location: location
  tags: allTags
  sku: {
    // Users' files: a copy in the paired region.
    name: 'Standard_GRS'
  }
  kind: 'StorageV2'
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    publicNetworkAccess: 'Enabled'
    supportsHttpsTrafficOnly: true
    encryption: {
      keySource: 'Microsoft.Storage'
      requireInfrastructureEncryption: true
      services: {
        blob: {
          enabled: true
          keyType: 'Account'
        }
      }
    }
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource filesBlobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: filesStorage
  name: 'default'
  properties: {
    // A deleted or overwritten file can be recovered for a week.
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource filesContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: filesBlobService
  name: filesContainerName
  properties: {
    publicAccess: 'None'
  }
}

// ---------------------------------------------------------------------------------------------
// Service Bus: the cluster-lifecycle and job-runs queues
// ---------------------------------------------------------------------------------------------

resource serviceBus 'Microsoft.ServiceBus/namespaces@2024-01-01' = {
  name: 'sb-${prefix}-${token}'
  location: location
  tags: allTags
  sku: {
    // Standard: the smallest tier with sessions, duplicate detection and scheduled messages.
    // Its operations suffice: running clusters send none (bench.azure_scale: health comes from
    // heartbeats), a create some tens (docs/deploy.md, "Scale").
    name: 'Standard'
    tier: 'Standard'
  }
  properties: {
    disableLocalAuth: true
    minimumTlsVersion: '1.2'
    publicNetworkAccess: 'Enabled'
  }
}

// Both queues carry level-triggered "evaluate this again" messages and share their settings.
var sessionQueueProperties = {
  // One session per cluster (or job run): session id = its id. One handler per cluster at a
  // time, FIFO per cluster. Must match the triggers' is_sessions_enabled=True.
  requiresSession: true
  // The senders' message ids (cmd:<cluster>:<etag>, r:<cluster>:<etag>:<bucket>) collapse
  // duplicate messages sent within 10 minutes.
  requiresDuplicateDetection: true
  duplicateDetectionHistoryTimeWindow: 'PT10M'
  // Abandoned (the function threw) ten times: moved to the dead-letter queue.
  maxDeliveryCount: 10
  // A handler takes seconds; the Functions host renews the lock up to
  // maxAutoLockRenewalDuration (host.json) while it runs.
  lockDuration: 'PT1M'
  // A message older than a day says nothing the timers would not send again; it is kept in
  // the dead-letter queue for the operator rather than dropped.
  defaultMessageTimeToLive: 'P1D'
  deadLetteringOnMessageExpiration: true
  enableBatchedOperations: true
  enablePartitioning: false
  maxSizeInMegabytes: 1024
}

resource lifecycleQueue 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' = {
  parent: serviceBus
  name: lifecycleQueueName
  properties: sessionQueueProperties
}

resource jobsQueue 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' = {
  parent: serviceBus
  name: jobsQueueName
  properties: sessionQueueProperties
}

// ---------------------------------------------------------------------------------------------
// Cosmos DB: metadata in two regions
// ---------------------------------------------------------------------------------------------

resource cosmos 'Microsoft.DocumentDB/databaseAccounts@2024-11-15' = {
  //checkov:skip=CKV_AZURE_99: the Flex Consumption app has no VNet integration here, so it reaches Cosmos DB over its public endpoint; every request needs an Entra ID token (disableLocalAuth), so there is no key to leak.
  //checkov:skip=CKV_AZURE_101: same reason as CKV_AZURE_99: public network access with Entra ID-only authentication.
  name: 'cosmos-${prefix}-${token}'
  location: cosmosPrimaryLocation
  tags: allTags
  kind: 'GlobalDocumentDB'
  properties: {
    databaseAccountOfferType: 'Standard'
    consistencyPolicy: {
      defaultConsistencyLevel: 'Session'
    }
    locations: [
      {
        locationName: cosmosPrimaryLocation
        failoverPriority: 0
        isZoneRedundant: cosmosZoneRedundant
      }
      {
        locationName: cosmosSecondaryLocation
        failoverPriority: 1
        isZoneRedundant: cosmosZoneRedundant
      }
    ]
    enableAutomaticFailover: true
    enableMultipleWriteLocations: cosmosMultiRegionWrites
    disableLocalAuth: true
    disableKeyBasedMetadataWriteAccess: true
    minimalTlsVersion: 'Tls12'
    publicNetworkAccess: 'Enabled'
    backupPolicy: {
      type: 'Periodic'
      periodicModeProperties: {
        backupIntervalInMinutes: 240
        backupRetentionIntervalInHours: 8
        backupStorageRedundancy: 'Geo'
      }
    }
  }
}

resource cosmosDatabase 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases@2024-11-15' = {
  parent: cosmos
  name: cosmosDatabaseName
  properties: {
    resource: {
      id: cosmosDatabaseName
    }
    options: {
      autoscaleSettings: {
        maxThroughput: cosmosMaxThroughput
      }
    }
  }
}

// Documents (clusters, workspaces, tokens, idempotency keys), partitioned by the document's
// own partition key. TTL on with no default: only items that carry a "ttl" expire.
resource docsContainer 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers@2024-11-15' = {
  parent: cosmosDatabase
  name: 'docs'
  properties: {
    resource: {
      id: 'docs'
      partitionKey: {
        paths: [
          '/pk'
        ]
        kind: 'Hash'
        version: 2
      }
      defaultTtl: -1
      // Never settle a multi-region write conflict on a cluster document by dropping a version
      // silently: the loser goes to the conflicts feed (docs/cosmos.md).
      conflictResolutionPolicy: {
        mode: 'Custom'
      }
    }
  }
}

// Utilization samples (heartbeats): many, short-lived, only listed by partition (a cluster);
// their own container and an index of the paths their queries use
// (shared/adapters/cosmos_store.py SAMPLES).
resource samplesContainer 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers@2024-11-15' = {
  parent: cosmosDatabase
  name: 'samples'
  properties: {
    resource: {
      id: 'samples'
      partitionKey: {
        paths: [
          '/pk'
        ]
        kind: 'Hash'
        version: 2
      }
      defaultTtl: -1
      indexingPolicy: {
        indexingMode: 'consistent'
        automatic: true
        includedPaths: [
          {
            path: '/pk/?'
          }
          {
            path: '/kind/?'
          }
          {
            path: '/key/?'
          }
          {
            path: '/expires_ms/?'
          }
        ]
        excludedPaths: [
          {
            path: '/*'
          }
        ]
      }
      conflictResolutionPolicy: {
        mode: 'LastWriterWins'
        conflictResolutionPath: '/_ts'
      }
    }
  }
}

// Cluster events, one logical partition per cluster; the adapter writes each event with its
// own "ttl" (SPARKPLANE_EVENT_TTL_DAYS) and the container's default is the same, as a backstop.
resource eventsContainer 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers@2024-11-15' = {
  parent: cosmosDatabase
  name: 'events'
  properties: {
    resource: {
      id: 'events'
      partitionKey: {
        paths: [
          '/cluster_id'
        ]
        kind: 'Hash'
        version: 2
      }
      defaultTtl: eventTtlDays * 86400
      // The same policy as shared/adapters/cosmos_store.py EVENTS: the composite indexes serve
      // ORDER BY ts, seq (both directions); the event bodies are never filtered on.
      indexingPolicy: {
        indexingMode: 'consistent'
        automatic: true
        includedPaths: [
          {
            path: '/*'
          }
        ]
        excludedPaths: [
          {
            path: '/event/*'
          }
          {
            path: '/"_etag"/?'
          }
        ]
        compositeIndexes: [
          [
            {
              path: '/ts'
              order: 'ascending'
            }
            {
              path: '/seq'
              order: 'ascending'
            }
          ]
          [
            {
              path: '/ts'
              order: 'descending'
            }
            {
              path: '/seq'
              order: 'descending'
            }
          ]
        ]
      }
      conflictResolutionPolicy: {
        mode: 'LastWriterWins'
        conflictResolutionPath: '/_ts'
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The function app
// ---------------------------------------------------------------------------------------------

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  //checkov:skip=CKV_AZURE_225: zone redundancy of a Flex Consumption plan is not offered in every Flex region; losing an instance loses no work (state is in Cosmos DB, pending work in Service Bus, and the host scales out again).
  name: 'plan-${prefix}-${token}'
  location: location
  tags: allTags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  //checkov:skip=CKV_AZURE_17: client certificates would break databricks-sdk and databricks-cli, which authenticate with bearer tokens over plain TLS.
  //checkov:skip=CKV_AZURE_222: the control plane is a public API (like a Databricks workspace URL): users' SDKs and the cluster agents reach it over the Internet; every request needs a bearer token.
  //checkov:skip=CKV_AZURE_212: Flex Consumption scales instances out and in with the load (to zero when idle); the app keeps no state in an instance, so a minimum instance count buys no failover.
  //checkov:skip=CKV_AZURE_213: App Service health check is not available on Flex Consumption; the platform restarts a failing host, and the reconciler timer notices stalled work.
  name: functionAppName
  location: location
  tags: allTags
  kind: 'functionapp,linux'
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    publicNetworkAccess: 'Enabled'
    siteConfig: {
      minTlsVersion: '1.2'
      http20Enabled: true
      ftpsState: 'Disabled'
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'SystemAssignedIdentity'
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
}

// Every setting the app reads in Azure (docs/deploy.md lists them all with their defaults).
var appSettings = {
  // Functions host: storage by identity (Storage Blob Data Owner below), telemetry by identity.
  AzureWebJobsStorage__accountName: storage.name
  APPLICATIONINSIGHTS_CONNECTION_STRING: appInsights.properties.ConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'Authorization=AAD'
  // The web console answers at / (functions/console.py), not the host's default home page.
  AzureWebJobsDisableHomepage: 'true'
  // The Service Bus trigger's identity-based connection "SPARKPLANE_SERVICEBUS". The plain
  // SPARKPLANE_SERVICEBUS must not be set in Azure: a value there is taken as a connection string.
  SPARKPLANE_SERVICEBUS__fullyQualifiedNamespace: serviceBusFqdn
  // Binding expressions of the triggers (%NAME% in functions/*.py).
  SPARKPLANE_LIFECYCLE_QUEUE: lifecycleQueue.name
  SPARKPLANE_JOBS_QUEUE: jobsQueue.name
  SPARKPLANE_RECONCILER_SCHEDULE: reconcilerSchedule
  SPARKPLANE_DRIFT_CHECK_S: string(driftCheckSeconds)
  SPARKPLANE_RECONCILE_INTERVAL_S: string(reconcileIntervalSeconds)
  SPARKPLANE_AUTOSCALE_SCHEDULE: autoscaleSchedule
  SPARKPLANE_IDLE_SCHEDULE: idleSchedule
  SPARKPLANE_JOBS_SCHEDULE: jobsSchedule
  // The Azure adapters (shared/wiring.py chooses by these four).
  SPARKPLANE_STORE: 'cosmos'
  SPARKPLANE_BUS: 'servicebus'
  SPARKPLANE_PROVISIONER: 'arm'
  SPARKPLANE_FILES: 'blob'
  SPARKPLANE_FILES_ACCOUNT_URL: filesStorage.properties.primaryEndpoints.blob
  SPARKPLANE_FILES_CONTAINER: filesContainer.name
  // The app package is read-only on Flex Consumption; local files go to the instance's /tmp.
  SPARKPLANE_DATA_DIR: '/tmp/sparkplane'
  SPARKPLANE_COSMOS_ENDPOINT: cosmos.properties.documentEndpoint
  SPARKPLANE_COSMOS_DATABASE: cosmosDatabase.name
  SPARKPLANE_COSMOS_PREFERRED_LOCATIONS: string([
    cosmosPrimaryLocation
    cosmosSecondaryLocation
  ])
  SPARKPLANE_COSMOS_CONSISTENCY: 'Session'
  SPARKPLANE_EVENT_TTL_DAYS: string(eventTtlDays)
  SPARKPLANE_SERVICEBUS_FQDN: serviceBusFqdn
  SPARKPLANE_ARM_SUBSCRIPTION_ID: workspacesSubscriptionId
  SPARKPLANE_ARM_SUBSCRIPTION_IDS: join(extraWorkspacesSubscriptionIds, ',')
  SPARKPLANE_ARM_SUBSCRIPTION_MAX_CLUSTERS: string(workspacesSubscriptionMaxClusters)
  SPARKPLANE_ARM_LOCATION: workspaceLocation
  SPARKPLANE_ARM_PLATFORM_RESOURCE_ID: functionApp.id
  SPARKPLANE_ARM_CONTROL_PLANE_URL: 'https://${functionApp.properties.defaultHostName}'
  SPARKPLANE_AGENT_CALLBACK_URL: 'https://${functionApp.properties.defaultHostName}'
  SPARKPLANE_ARM_AGENT_SOURCE_URL: agentSourceUrl
  SPARKPLANE_ARM_AGENT_SOURCE_SHA256: agentSourceSha256
  SPARKPLANE_ARM_ADMIN_PUBLIC_KEY: nodeAdminPublicKey
  // Left out of the deny assignment every managed resource group gets (deployment stacks).
  SPARKPLANE_ARM_PRINCIPAL_ID: functionApp.identity.principalId
  // The key of the clusters' Spark secrets and Connect tokens: never in the site's config.
  SPARKPLANE_SPARK_SECRET_KEY: '@Microsoft.KeyVault(VaultName=${keyVault.name};SecretName=${sparkSecretKeyName})'
}

resource functionAppSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  // This is the 'appsettings' config (name-value pairs); the checks below read properties of the
  // 'web' config (logging, .NET version, authentication, content share) that it does not have.
  //checkov:skip=CKV_AZURE_63: false positive: an appsettings resource, not the web config; the app logs to Application Insights.
  //checkov:skip=CKV_AZURE_65: false positive: an appsettings resource; detailed error pages are an IIS feature, not Functions on Linux.
  //checkov:skip=CKV_AZURE_66: false positive: an appsettings resource; failed request tracing is an IIS feature, not Functions on Linux.
  //checkov:skip=CKV_AZURE_80: false positive: an appsettings resource, and the app is Python, not .NET.
  //checkov:skip=CKV_AZURE_13: the API authenticates every request itself with Databricks-style bearer tokens (databricks-sdk, databricks-cli); App Service Authentication in front of it would reject them.
  //checkov:skip=CKV_AZURE_88: Flex Consumption runs the app from its deployment package in blob storage; there is no Azure Files content share.
  //checkov:skip=CKV_AZURE_222: false positive on an appsettings resource; see the function app for why the API is public.
  parent: functionApp
  name: 'appsettings'
  properties: union(appSettings, additionalAppSettings)
  dependsOn: [
    storageBlobOwner
    filesContributor
    serviceBusOwner
    cosmosContributor
    metricsPublisher
    keyVaultReader
  ]
}

// ---------------------------------------------------------------------------------------------
// Role assignments of the app's managed identity (instead of keys)
// ---------------------------------------------------------------------------------------------

// The deployment package and the host's blob leases (timer triggers run once per schedule).
resource storageBlobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, functionApp.id, storageBlobDataOwner)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataOwner)
    principalId: functionApp.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

// The workspaces' files: read, write, delete blobs (and read them as the source of Put Block
// From URL) in the files account, and nothing on any other account.
resource filesContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(filesStorage.id, functionApp.id, storageBlobDataContributor)
  scope: filesStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributor)
    principalId: functionApp.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

// Data Owner rather than Sender + Receiver: besides sending (and scheduling and cancelling) and
// receiving session messages, the Flex Consumption scale controller reads the queue's runtime
// properties (message counts) with the app's identity to scale on the backlog, which takes the
// Manage right. Scoped to this namespace only.
resource serviceBusOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(serviceBus.id, functionApp.id, serviceBusDataOwner)
  scope: serviceBus
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', serviceBusDataOwner)
    principalId: functionApp.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

// Cosmos DB data plane (items and queries; not databases or containers: those are above).
resource cosmosContributor 'Microsoft.DocumentDB/databaseAccounts/sqlRoleAssignments@2024-11-15' = {
  parent: cosmos
  name: guid(cosmos.id, functionApp.id, cosmosDataContributor)
  properties: {
    roleDefinitionId: '${cosmos.id}/sqlRoleDefinitions/${cosmosDataContributor}'
    principalId: functionApp.identity.principalId
    scope: cosmos.id
  }
}

// The Key Vault reference of SPARKPLANE_SPARK_SECRET_KEY: read secrets of this vault only.
resource keyVaultReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(keyVault.id, functionApp.id, keyVaultSecretsUser)
  scope: keyVault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUser)
    principalId: functionApp.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

// Telemetry to Application Insights with Entra ID (DisableLocalAuth).
resource metricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, functionApp.id, monitoringMetricsPublisher)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisher)
    principalId: functionApp.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

// Workspaces and clusters: a custom role at subscription scope (see the module for why not
// Contributor).
module provisionerRbac 'modules/provisioner-rbac.bicep' = if (grantProvisionerRoles) {
  name: 'sparkplane-provisioner-rbac-${token}'
  // The workspaces' subscription only (one of their own, ideally): nothing in the platform's.
  scope: subscription(workspacesSubscriptionId)
  params: {
    principalId: functionApp.identity.principalId
    platformName: functionAppName
  }
}

// The same grants in each further workspaces' subscription: one subscription-scope module per
// subscription (a role definition and its assignments live in the subscription they are for; a
// resource-group deployment reaches another subscription only through such a module, and the
// deploying principal needs Owner or User Access Administrator there too).
module provisionerRbacExtra 'modules/provisioner-rbac.bicep' = [
  for (sub, i) in extraWorkspacesSubscriptionIds: if (grantProvisionerRoles) {
    name: 'sparkplane-provisioner-rbac-${token}-${i}'
    scope: subscription(sub)
    params: {
      principalId: functionApp.identity.principalId
      platformName: functionAppName
      roleNameSuffix: ', ${sub}'
    }
  }
]

// ---------------------------------------------------------------------------------------------
// What the operator watches: platform logs in Log Analytics, an alert on dead letters
// ---------------------------------------------------------------------------------------------

resource serviceBusDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: serviceBus
  properties: {
    workspaceId: logs.id
    logs: [
      {
        categoryGroup: 'allLogs'
        enabled: true
      }
    ]
    metrics: [
      {
        category: 'AllMetrics'
        enabled: true
      }
    ]
  }
}

resource cosmosDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: cosmos
  properties: {
    workspaceId: logs.id
    logAnalyticsDestinationType: 'Dedicated'
    logs: [
      {
        categoryGroup: 'allLogs'
        enabled: true
      }
    ]
    metrics: [
      {
        category: 'Requests'
        enabled: true
      }
    ]
  }
}

resource deadLetterAlert 'Microsoft.Insights/metricAlerts@2018-03-01' = {
  name: 'sparkplane-dead-letters-${token}'
  location: 'global'
  tags: allTags
  properties: {
    description: 'Messages in the dead-letter queue of the lifecycle or jobs queue: a message failed 10 times (MaxDeliveryCountExceeded) or expired. See docs/deploy.md.'
    severity: 2
    enabled: true
    scopes: [
      serviceBus.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          name: 'dead-lettered'
          criterionType: 'StaticThresholdCriterion'
          metricNamespace: 'Microsoft.ServiceBus/namespaces'
          metricName: 'DeadletteredMessages'
          dimensions: [
            {
              name: 'EntityName'
              operator: 'Include'
              values: [
                lifecycleQueue.name
                jobsQueue.name
              ]
            }
          ]
          operator: 'GreaterThan'
          threshold: 0
          timeAggregation: 'Maximum'
        }
      ]
    }
  }
}

@description('Host name of the control plane: the Databricks "workspace URL" for databricks-sdk is https://<this>.')
output functionAppHostname string = functionApp.properties.defaultHostName

@description('Name of the function app (for func azure functionapp publish).')
output functionAppName string = functionApp.name

@description('Object id of the app\'s managed identity.')
output functionAppPrincipalId string = functionApp.identity.principalId

@description('Cosmos DB endpoint (SPARKPLANE_COSMOS_ENDPOINT).')
output cosmosEndpoint string = cosmos.properties.documentEndpoint

@description('Service Bus namespace host name (SPARKPLANE_SERVICEBUS_FQDN).')
output serviceBusFqdn string = serviceBusFqdn

@description('Storage account of the deployment package.')
output storageAccountName string = storage.name

@description('Storage account of the workspaces\' files (SPARKPLANE_FILES_ACCOUNT_URL).')
output filesAccountName string = filesStorage.name

@description('The Key Vault holding the key of the clusters\' Spark secrets (secret spark-secret-key; docs/deploy.md creates it once).')
output keyVaultName string = keyVault.name
