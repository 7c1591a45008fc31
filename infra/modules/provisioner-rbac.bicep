// What the control plane's managed identity may do in the subscription that holds the
// workspaces' managed resource groups (deployed by main.bicep at subscription scope).
//
// Why not Contributor: Contributor could also read every storage account's keys, run commands
// on any VM, change any resource in the subscription, and it still could not create the role
// assignment the workspace template makes. The custom role below holds what the ARM provisioner
// does and nothing else (each action listed, no write wildcard): create and delete resource
// groups; run deployments and the deployment stacks that guard the groups; create, resize and
// delete the resources of infra/templates (VNet, NSG, NAT gateway and its IP, NICs, VMs, scale
// sets, disks, storage accounts without their keys, the nodes' user-assigned identity).
// It has to be granted at subscription scope: the managed groups are created at run time, and
// whoever creates a group gets no rights in it by doing so. So it is deployed to the workspaces'
// subscription (main.bicep's workspacesSubscriptionId), which should be one of their own, as
// Azure Databricks' managed groups are isolated: this identity can manage compute and
// networking throughout the subscription it is granted, and nothing outside it.
targetScope = 'subscription'

@description('Principal (object) id of the function app\'s system-assigned managed identity.')
param principalId string

@description('Distinguishes this platform\'s custom role from another deployment\'s in the same tenant (role names are unique per tenant).')
param platformName string

@description('Appended to the custom role\'s name: empty for the first workspaces\' subscription, the subscription id for each further one (the same platform\'s role in several subscriptions needs a name per subscription: role names are unique per tenant).')
param roleNameSuffix string = ''

var rbacAdministrator = 'f58310d9-a9f6-439a-9e8d-f62e7b41a168'
var storageBlobDataContributor = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'

// The one role assignment workspace.json makes: Storage Blob Data Contributor for the nodes'
// identity on the workspace storage account. The condition confines the delegation to exactly
// that role (created or deleted), given to a service principal (a managed identity) other than
// the control plane itself (it cannot grant itself the workspaces' data); the scope is the
// workspaces' subscription, where the module is deployed. The nodes' identities are made at run
// time (one per workspace), so no condition can name them in advance.
var delegationCondition = '((!(ActionMatches{\'Microsoft.Authorization/roleAssignments/write\'})) OR (@Request[Microsoft.Authorization/roleAssignments:RoleDefinitionId] ForAnyOfAnyValues:GuidEquals {${storageBlobDataContributor}} AND @Request[Microsoft.Authorization/roleAssignments:PrincipalType] ForAnyOfAnyValues:StringEqualsIgnoreCase {\'ServicePrincipal\'} AND @Request[Microsoft.Authorization/roleAssignments:PrincipalId] ForAnyOfAllValues:GuidNotEquals {${principalId}})) AND ((!(ActionMatches{\'Microsoft.Authorization/roleAssignments/delete\'})) OR (@Resource[Microsoft.Authorization/roleAssignments:RoleDefinitionId] ForAnyOfAnyValues:GuidEquals {${storageBlobDataContributor}}))'

resource provisionerRole 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(subscription().id, 'sparkplane-workspace-provisioner', platformName)
  properties: {
    roleName: 'sparkplane workspace provisioner (${platformName}${roleNameSuffix})'
    description: 'Creates and deletes sparkplane workspaces\' managed resource groups and the VMs, scale sets and networks of their clusters.'
    type: 'CustomRole'
    assignableScopes: [
      subscription().id
    ]
    permissions: [
      {
        // Exactly what shared/adapters/arm/ requests and what ARM checks when it deploys
        // infra/templates as this identity (tests/unit/test_infra.py derives the list from both):
        // no wildcard but read-only ones. Left out on purpose: VM run commands and extensions
        // (code on any VM), VNet peering, storage account keys and SAS, tag writes of their own.
        actions: [
          // Resource groups (create_workspace, workspace_status, delete_workspace, the tag query).
          'Microsoft.Resources/subscriptions/read'
          'Microsoft.Resources/subscriptions/operationresults/read'
          'Microsoft.Resources/subscriptions/providers/read'
          'Microsoft.Resources/subscriptions/resourceGroups/read'
          'Microsoft.Resources/subscriptions/resourceGroups/write'
          'Microsoft.Resources/subscriptions/resourceGroups/delete'
          'Microsoft.Resources/subscriptions/resourceGroups/resources/read'
          'Microsoft.Resources/subscriptions/resources/read'
          // The bulk health query of every cluster's VMs (Azure Resource Graph; it returns
          // only what the other read actions already allow).
          'Microsoft.ResourceGraph/resources/read'
          // Deployments of workspace.json and cluster.json in the managed groups.
          'Microsoft.Resources/deployments/read'
          'Microsoft.Resources/deployments/write'
          'Microsoft.Resources/deployments/delete'
          'Microsoft.Resources/deployments/cancel/action'
          'Microsoft.Resources/deployments/operations/read'
          'Microsoft.Resources/deployments/operationstatuses/read'
          'Microsoft.Resources/subscriptions/resourceGroups/deployments/read'
          'Microsoft.Resources/subscriptions/resourceGroups/deployments/write'
          'Microsoft.Resources/subscriptions/resourceGroups/deployments/operationstatuses/read'
          // The deployment stacks whose deny settings guard each managed group (workspace-guard.json).
          'Microsoft.Resources/deploymentStacks/read'
          'Microsoft.Resources/deploymentStacks/write'
          'Microsoft.Resources/deploymentStacks/delete'
          'Microsoft.Resources/deploymentStacks/manageDenySetting/action'
          'Microsoft.Authorization/roleAssignments/read'
          // workspace.json: the workers VNet, subnet, NSG, NAT gateway and its IP.
          'Microsoft.Network/virtualNetworks/read'
          'Microsoft.Network/virtualNetworks/write'
          'Microsoft.Network/virtualNetworks/delete'
          'Microsoft.Network/virtualNetworks/subnets/read'
          'Microsoft.Network/virtualNetworks/subnets/write'
          'Microsoft.Network/virtualNetworks/subnets/delete'
          'Microsoft.Network/virtualNetworks/subnets/join/action'
          'Microsoft.Network/virtualNetworks/subnets/joinViaServiceEndpoint/action'
          'Microsoft.Network/networkSecurityGroups/read'
          'Microsoft.Network/networkSecurityGroups/write'
          'Microsoft.Network/networkSecurityGroups/delete'
          'Microsoft.Network/networkSecurityGroups/join/action'
          'Microsoft.Network/networkSecurityGroups/securityRules/read'
          'Microsoft.Network/natGateways/read'
          'Microsoft.Network/natGateways/write'
          'Microsoft.Network/natGateways/delete'
          'Microsoft.Network/natGateways/join/action'
          'Microsoft.Network/publicIPAddresses/read'
          'Microsoft.Network/publicIPAddresses/write'
          'Microsoft.Network/publicIPAddresses/delete'
          'Microsoft.Network/publicIPAddresses/join/action'
          // cluster.json: the driver's NIC (observe() reads its address), the scale set's NICs.
          'Microsoft.Network/networkInterfaces/read'
          'Microsoft.Network/networkInterfaces/write'
          'Microsoft.Network/networkInterfaces/delete'
          'Microsoft.Network/networkInterfaces/join/action'
          'Microsoft.Network/locations/*/read'
          // cluster.json: the driver VM, the workers' scale set and their disks; resize (PATCH
          // sku.capacity), removing instances (the scale set's delete action), growing local
          // storage (data disks on a VM or an instance).
          'Microsoft.Compute/virtualMachines/read'
          'Microsoft.Compute/virtualMachines/write'
          'Microsoft.Compute/virtualMachines/delete'
          'Microsoft.Compute/virtualMachines/instanceView/read'
          'Microsoft.Compute/virtualMachineScaleSets/read'
          'Microsoft.Compute/virtualMachineScaleSets/write'
          'Microsoft.Compute/virtualMachineScaleSets/delete'
          'Microsoft.Compute/virtualMachineScaleSets/delete/action'
          'Microsoft.Compute/virtualMachineScaleSets/instanceView/read'
          'Microsoft.Compute/virtualMachineScaleSets/networkInterfaces/read'
          'Microsoft.Compute/virtualMachineScaleSets/virtualMachines/read'
          'Microsoft.Compute/virtualMachineScaleSets/virtualMachines/write'
          'Microsoft.Compute/virtualMachineScaleSets/virtualMachines/instanceView/read'
          'Microsoft.Compute/virtualMachineScaleSets/virtualMachines/networkInterfaces/read'
          'Microsoft.Compute/disks/read'
          'Microsoft.Compute/disks/write'
          'Microsoft.Compute/disks/delete'
          'Microsoft.Compute/locations/*/read'
          // workspace.json: the workspace storage account and its root container (no keys).
          'Microsoft.Storage/storageAccounts/read'
          'Microsoft.Storage/storageAccounts/write'
          'Microsoft.Storage/storageAccounts/delete'
          'Microsoft.Storage/storageAccounts/blobServices/read'
          'Microsoft.Storage/storageAccounts/blobServices/write'
          'Microsoft.Storage/storageAccounts/blobServices/containers/read'
          'Microsoft.Storage/storageAccounts/blobServices/containers/write'
          'Microsoft.Storage/storageAccounts/blobServices/containers/delete'
          'Microsoft.Storage/locations/*/read'
          // workspace.json: the nodes' identity, which the VMs and the scale set run as.
          'Microsoft.ManagedIdentity/userAssignedIdentities/read'
          'Microsoft.ManagedIdentity/userAssignedIdentities/write'
          'Microsoft.ManagedIdentity/userAssignedIdentities/delete'
          'Microsoft.ManagedIdentity/userAssignedIdentities/assign/action'
        ]
        notActions: [
          'Microsoft.Storage/storageAccounts/listKeys/action'
          'Microsoft.Storage/storageAccounts/regeneratekey/action'
          'Microsoft.Storage/storageAccounts/ListAccountSas/action'
          'Microsoft.Storage/storageAccounts/listServiceSas/action'
        ]
        dataActions: []
        notDataActions: []
      }
    ]
  }
}

resource provisionerAssignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(subscription().id, principalId, provisionerRole.id)
  properties: {
    roleDefinitionId: provisionerRole.id
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'sparkplane control plane: provisions workspaces and clusters.'
  }
}

resource nodeStorageDelegation 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(subscription().id, principalId, rbacAdministrator)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', rbacAdministrator)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'sparkplane control plane: grants each workspace\'s node identity Storage Blob Data Contributor on the workspace storage account, and nothing else (condition).'
    condition: delegationCondition
    conditionVersion: '2.0'
  }
}

output provisionerRoleId string = provisionerRole.id
